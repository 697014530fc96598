//! The iterative server (CS:APP's `echoserveri`): accept one connection, echo it until
//! the client leaves, then accept the next.
//!
//! Trade-off: the simplest server there is, and it serves one client at a time. A second
//! client's `connect` succeeds at once (the kernel completes the handshake and queues the
//! connection in the listen backlog) and its first `write` succeeds (the kernel buffers
//! it), but its `read` blocks until the first client leaves. `--max-conns` does not apply:
//! there is only ever one connection.

use std::io;

use crate::accept::Acceptor;
use crate::conn::{self, ConnSettings};
use crate::live::{Entry, LiveConns};
use crate::Server;

pub fn run(server: Server) -> io::Result<()> {
    let Server {
        listeners,
        config,
        shutdown,
        cap,
    } = server;
    let live = LiveConns::new();
    let flag = shutdown.flag();
    let settings = ConnSettings::new(&config, &flag);
    let mut acceptor = Acceptor::new(&listeners, &shutdown)?;
    std::thread::scope(|scope| {
        // The one helper thread: it wakes the main thread out of a blocking read when the
        // server shuts down. It is joined when the scope ends.
        scope.spawn(|| {
            while !shutdown.wait_timeout(std::time::Duration::from_secs(3600)) {}
            live.close_all();
        });
        while let Some((conn, peer)) = acceptor.accept() {
            // One connection at a time: the cap always has room, but every model goes
            // through it.
            let (conn, admitted) = match live.enter(&cap, conn, peer) {
                Entry::Serve(conn, admitted) => (conn, admitted),
                Entry::Refused => continue,
                Entry::Closing => break,
            };
            conn::serve_blocking(&conn, peer, settings, admitted);
        }
        // The watcher thread may still be waiting if the loop ended another way.
        shutdown.trigger();
    });
    Ok(())
}
