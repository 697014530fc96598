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
//! Unlike the book's detached threads, every thread here is joined, as soon as it ends: a
//! reaper thread holds the handles, and each connection thread tells it "I am done" as its
//! last act (before issue 9 finished threads waited for the next connection to be
//! joined). At shutdown the reaper joins the rest, so none outlives the server.

use std::collections::HashMap;
use std::io;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::accept::Acceptor;
use crate::conn::{self, ConnSettings};
use crate::live::{Entry, LiveConns};
use crate::Server;

/// The stack of a connection thread. The echo loop keeps its buffer on the heap and needs
/// a few KiB of stack; the default 2 MiB would only reserve address space, but a small
/// stack is the lecture's point about the cost of a thread.
pub const STACK_SIZE: usize = 64 * 1024;

pub fn run(server: Server) -> io::Result<()> {
    let Server {
        listeners,
        config,
        shutdown,
        cap,
    } = server;
    let live = LiveConns::new();
    let flag = shutdown.flag();
    let (reap_tx, reap_rx) = mpsc::channel::<Reap>();
    let reaper = std::thread::Builder::new()
        .name("thread-reaper".to_string())
        .stack_size(STACK_SIZE)
        .spawn(move || reap(reap_rx))?;
    let mut acceptor = Acceptor::new(&listeners, &shutdown)?;
    let mut next_id: u64 = 0;
    while let Some((conn, peer)) = acceptor.accept() {
        let (conn, admitted) = match live.enter(&cap, conn, peer) {
            Entry::Serve(conn, admitted) => (conn, admitted),
            Entry::Refused => continue,
            Entry::Closing => break,
        };
        let config = config.clone();
        let flag = Arc::clone(&flag);
        let id = next_id;
        next_id += 1;
        let done = reap_tx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("conn {peer}"))
            .stack_size(STACK_SIZE)
            // `move`: the thread owns its connection; no other flow can touch it.
            .spawn(move || {
                conn::serve_blocking(&conn, peer, ConnSettings::new(&config, &flag), admitted);
                // The last act: the reaper joins this thread now.
                let _ = done.send(Reap::Finished(id, peer));
            });
        match spawned {
            Ok(handle) => {
                let _ = reap_tx.send(Reap::Started(id, handle));
            }
            Err(err) => {
                crate::stats::global().dropped();
                log::warn!("conn {peer} dropped: cannot spawn a thread: {err}")
            }
        }
    }
    live.close_all();
    // The reaper ends once every connection thread has ended (each holds a sender).
    drop(reap_tx);
    let _ = reaper.join();
    Ok(())
}

/// What the reaper hears about a connection thread.
#[derive(Debug)]
enum Reap {
    /// The accept loop spawned it.
    Started(u64, JoinHandle<()>),
    /// It is about to end (it may say so before the accept loop's `Started` arrives).
    Finished(u64, std::net::SocketAddr),
}

/// Joins every connection thread as soon as it says it finished, like `waitpid` for the
/// process model's children; returns once every sender is gone, every thread joined.
fn reap(messages: mpsc::Receiver<Reap>) {
    let mut running: HashMap<u64, JoinHandle<()>> = HashMap::new();
    let mut finished_first: HashMap<u64, std::net::SocketAddr> = HashMap::new();
    let join = |handle: JoinHandle<()>, peer: Option<std::net::SocketAddr>| {
        let _ = handle.join();
        if let Some(peer) = peer {
            log::debug!("conn {peer}: its thread joined");
        }
    };
    // Bounded: the loop ends when the last sender drops, and every connection thread
    // drops its sender when it ends.
    for message in messages {
        match message {
            Reap::Started(id, handle) => {
                if let Some(peer) = finished_first.remove(&id) {
                    join(handle, Some(peer));
                } else {
                    running.insert(id, handle);
                }
            }
            Reap::Finished(id, peer) => match running.remove(&id) {
                Some(handle) => join(handle, Some(peer)),
                None => {
                    finished_first.insert(id, peer);
                }
            },
        }
    }
    for (_, handle) in running {
        join(handle, None);
    }
}
