//! The open connections of a blocking model (iterative, thread, prethreaded): counted
//! for `--max-conns`, and reachable so that shutdown can wake a thread blocked in `read`.

use std::collections::HashMap;
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex, PoisonError};

/// The registry. A connection is in it from [`LiveConns::admit`] until its [`Admitted`]
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

/// Proof that a connection counts toward `--max-conns`; removes it on drop.
#[derive(Debug)]
pub struct Admitted {
    live: Arc<LiveConns>,
    id: u64,
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

    /// Registers `conn` unless `max_conns` are already open or the server is closing.
    pub fn admit(self: &Arc<Self>, conn: &Arc<TcpStream>, max_conns: usize) -> Option<Admitted> {
        let mut inner = self.lock();
        if inner.closed || inner.conns.len() >= max_conns {
            return None;
        }
        let id = inner.next_id;
        inner.next_id += 1;
        inner.conns.insert(id, Arc::clone(conn));
        Some(Admitted {
            live: Arc::clone(self),
            id,
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
