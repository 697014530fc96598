//! Prethreaded (CS:APP's `echoservert_pre`): `--workers N` threads created up front, fed
//! accepted connections through a bounded queue ([`BoundedQueue`], the book's `sbuf`).
//!
//! Trade-off: no thread creation per connection and a fixed thread count, but a worker is
//! tied to one connection for its whole life. When N clients connect and go silent, every
//! worker is blocked in `read` on them, and every later client is accepted (its `connect`
//! and first `write` succeed) but waits in the queue without an echo. The book's version,
//! with 4 workers, stops serving everyone at the fifth idle client. Here the damage is
//! bounded by `--idle-timeout`: a silent connection frees its worker after that long. The
//! queue itself holds at most [`QUEUE_CAPACITY`] connections; when it is full the acceptor
//! waits, so memory never grows without bound, and further clients wait in the listen
//! backlog.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

use crate::accept::Acceptor;
use crate::conn::{self, ConnSettings};
use crate::live::{Admitted, Entry, LiveConns};
use crate::sbuf::BoundedQueue;
use crate::Server;

/// Connections accepted but not yet taken by a worker (the book's `SBUFSIZE`).
pub const QUEUE_CAPACITY: usize = 16;

/// The default `--workers`: 4 per core, since workers mostly wait on the network.
pub fn default_workers() -> usize {
    4 * crate::cores()
}

/// A connection waiting for a worker, already counted toward `--max-conns`.
struct Queued {
    conn: Arc<TcpStream>,
    peer: SocketAddr,
    admitted: Admitted,
}

pub fn run(server: Server) -> io::Result<()> {
    let Server {
        listeners,
        config,
        shutdown,
        cap,
    } = server;
    let n_workers = config.workers.unwrap_or_else(default_workers);
    let queue: BoundedQueue<Queued> = BoundedQueue::new(QUEUE_CAPACITY);
    let live = LiveConns::new();
    let flag = shutdown.flag();
    let settings = ConnSettings::new(&config, &flag);
    let mut acceptor = Acceptor::new(&listeners, &shutdown)?;
    std::thread::scope(|scope| -> io::Result<()> {
        for worker_idx in 0..n_workers {
            let queue = &queue;
            let spawned = std::thread::Builder::new()
                .name(format!("worker {worker_idx}"))
                .stack_size(super::thread::STACK_SIZE)
                .spawn_scoped(scope, move || {
                    while let Some(job) = queue.pop() {
                        conn::serve_blocking(&job.conn, job.peer, settings, job.admitted);
                    }
                });
            if let Err(err) = spawned {
                // The workers already started wait in `pop`: release them before the
                // scope joins them.
                queue.close();
                return Err(err);
            }
        }
        // Shutdown: wake workers blocked in read, and an acceptor blocked on a full queue.
        scope.spawn(|| {
            while !shutdown.wait_timeout(std::time::Duration::from_secs(3600)) {}
            live.close_all();
            queue.close();
        });
        while let Some((conn, peer)) = acceptor.accept() {
            let (conn, admitted) = match live.enter(&cap, conn, peer) {
                Entry::Serve(conn, admitted) => (conn, admitted),
                Entry::Refused => continue,
                Entry::Closing => break,
            };
            let job = Queued {
                conn,
                peer,
                admitted,
            };
            if queue.push(job).is_err() {
                break; // Closed: shutting down.
            }
        }
        shutdown.trigger();
        Ok(())
    })
}
