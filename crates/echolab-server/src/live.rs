//! The open connections of a blocking model (iterative, thread, prethreaded), reachable so
//! that shutdown can wake a thread blocked in `read`; each holds its place under the cap
//! ([`crate::admission`]).

use std::collections::HashMap;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex, PoisonError};

use crate::admission::{Admission, ConnCap};

/// The registry. A connection is in it from [`LiveConns::enter`] until its [`Admitted`]
/// guard drops.
#[derive(Debug, Default)]
pub struct LiveConns {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    conns: HashMap<u64, Arc<TcpStream>>,
    /// Set by [`LiveConns::close_all`]; later admissions are refused.
    closed: bool,
}

/// What [`LiveConns::enter`] made of an accepted connection.
#[derive(Debug)]
pub enum Entry {
    /// Registered, holding its place under the cap: serve it.
    Serve(Arc<TcpStream>, Admitted),
    /// Over the cap: already closed and logged.
    Refused,
    /// The server is shutting down: stop accepting.
    Closing,
}

/// Proof that a connection is registered and holds its place under the cap; removes it
/// (and frees the place) on drop.
#[derive(Debug)]
pub struct Admitted {
    live: Arc<LiveConns>,
    id: u64,
    _admission: Admission,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.live.lock().conns.remove(&self.id);
    }
}

impl LiveConns {
    pub fn new() -> Arc<LiveConns> {
        Arc::new(LiveConns::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A connection thread that panicked leaves the map consistent (every change is one
        // insert or remove), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes an accepted connection through the cap and into the registry: the one path
    /// into a blocking model. A refused connection is closed and logged by the cap.
    pub fn enter(self: &Arc<Self>, cap: &Arc<ConnCap>, conn: TcpStream, peer: SocketAddr) -> Entry {
        let admission = match cap.admit(peer) {
            Ok(admission) => admission,
            Err(why) => {
                cap.refuse(conn, peer, why);
                return Entry::Refused;
            }
        };
        let conn = Arc::new(conn);
        match self.admit(&conn, admission) {
            Some(admitted) => Entry::Serve(conn, admitted),
            None => Entry::Closing,
        }
    }

    /// Registers `conn`, admitted under the cap, unless the server is closing.
    fn admit(self: &Arc<Self>, conn: &Arc<TcpStream>, admission: Admission) -> Option<Admitted> {
        let mut inner = self.lock();
        if inner.closed {
            return None;
        }
        let id = inner.next_id;
        inner.next_id += 1;
        inner.conns.insert(id, Arc::clone(conn));
        Some(Admitted {
            live: Arc::clone(self),
            id,
            _admission: admission,
        })
    }

    /// How many connections are open.
    pub fn len(&self) -> usize {
        self.lock().conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Shuts down every open connection in both directions, so that a thread blocked in
    /// `read` or `write` on it returns at once, and refuses new ones.
    pub fn close_all(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        for conn in inner.conns.values() {
            let _ = conn.shutdown(Shutdown::Both);
        }
    }
}
