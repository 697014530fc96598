//! The connection cap every model uses: at most `--max-conns` connections open at once,
//! at most `--max-conns-per-ip` from one IP address, and refusals logged at a bounded rate.
//!
//! A model asks [`ConnCap::admit`] for each accepted connection and keeps the
//! [`Admission`] for as long as the connection is open (the process model: until its
//! child is reaped); dropping it frees the place. A refused connection is closed at once:
//! its client sees end-of-file without an echo.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// At most one "refused" line per this interval; the ones in between are counted and
/// reported with the next line, so a flood of refusals cannot flood the log.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `--max-conns` connections are open.
    Full { max_conns: usize },
    /// `--max-conns-per-ip` connections from this address are open.
    PerPeer { max_per_peer: usize },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Full { max_conns } => {
                write!(f, "--max-conns {max_conns} connections already open")
            }
            Refusal::PerPeer { max_per_peer } => write!(
                f,
                "--max-conns-per-ip {max_per_peer} connections from this address already open"
            ),
        }
    }
}

/// The cap, shared by every loop, worker and accept loop of a server.
#[derive(Debug)]
pub struct ConnCap {
    max_conns: usize,
    /// `None`: no limit per address.
    max_per_peer: Option<usize>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Connections admitted and not yet dropped.
    open: usize,
    /// The same, by peer address; an address leaves the map when its count falls to 0.
    per_peer: HashMap<IpAddr, usize>,
    /// When the last "refused" line was logged, and the refusals not logged since.
    last_logged: Option<Instant>,
    unlogged: u64,
}

/// A place under the cap, held while the connection is open; freed on drop.
#[derive(Debug)]
pub struct Admission {
    cap: Arc<ConnCap>,
    ip: IpAddr,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut state = self.cap.lock();
        state.open -= 1;
        if let Some(count) = state.per_peer.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                state.per_peer.remove(&self.ip);
            }
        }
    }
}

impl ConnCap {
    /// A cap of `max_conns` (at least 1) and, if given, `max_per_peer` per IP address.
    pub fn new(max_conns: usize, max_per_peer: Option<usize>) -> Arc<ConnCap> {
        Arc::new(ConnCap {
            max_conns,
            max_per_peer,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the counts consistent before anything can panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A place for a connection from `peer`, or why there is none.
    pub fn admit(self: &Arc<Self>, peer: SocketAddr) -> Result<Admission, Refusal> {
        // A dual-stack IPv6 listener (`[::]`) sees an IPv4 peer as `::ffff:a.b.c.d`: the
        // same address as on an IPv4 listener, so it counts under the same entry.
        let ip = peer.ip().to_canonical();
        let mut state = self.lock();
        if state.open >= self.max_conns {
            return Err(Refusal::Full {
                max_conns: self.max_conns,
            });
        }
        let from_peer = state.per_peer.get(&ip).copied().unwrap_or(0);
        if let Some(max_per_peer) = self.max_per_peer {
            if from_peer >= max_per_peer {
                return Err(Refusal::PerPeer { max_per_peer });
            }
        }
        state.open += 1;
        state.per_peer.insert(ip, from_peer + 1);
        Ok(Admission {
            cap: Arc::clone(self),
            ip,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.lock().open
    }

    /// Closes `conn`, refused for `why`, and logs it unless a line was logged less than
    /// [`REFUSAL_LOG_INTERVAL`] ago (then it is counted, and reported with the next line).
    pub fn refuse<C>(&self, conn: C, peer: SocketAddr, why: Refusal) {
        // Counted before the close: a client that sees its refusal finds it counted.
        crate::stats::global().refused(why);
        drop(conn);
        let now = Instant::now();
        let mut state = self.lock();
        let due = state
            .last_logged
            .is_none_or(|last| now.duration_since(last) >= REFUSAL_LOG_INTERVAL);
        if !due {
            state.unlogged += 1;
            return;
        }
        let unlogged = std::mem::take(&mut state.unlogged);
        state.last_logged = Some(now);
        drop(state);
        if unlogged > 0 {
            log::warn!(
                "conn {peer} refused: {why} ({unlogged} more refused since the last such line)"
            );
        } else {
            log::warn!("conn {peer} refused: {why}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(last_octet: u8, port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, last_octet], port))
    }

    #[test]
    fn the_global_cap_counts_open_connections_and_frees_on_drop() {
        let cap = ConnCap::new(2, None);
        let a = cap.admit(peer(1, 1)).unwrap();
        let _b = cap.admit(peer(2, 1)).unwrap();
        assert_eq!(
            cap.admit(peer(3, 1)).unwrap_err(),
            Refusal::Full { max_conns: 2 }
        );
        assert_eq!(cap.open(), 2);
        drop(a);
        assert_eq!(cap.open(), 1);
        assert!(cap.admit(peer(3, 1)).is_ok());
    }

    #[test]
    fn the_per_peer_cap_counts_by_address_not_port() {
        let cap = ConnCap::new(10, Some(2));
        let first = cap.admit(peer(1, 1)).unwrap();
        let _second = cap.admit(peer(1, 2)).unwrap();
        assert_eq!(
            cap.admit(peer(1, 3)).unwrap_err(),
            Refusal::PerPeer { max_per_peer: 2 }
        );
        // Another address is not affected.
        let _other = cap.admit(peer(2, 1)).unwrap();
        drop(first);
        let _third = cap.admit(peer(1, 3)).unwrap();
        assert_eq!(cap.open(), 3);
    }

    #[test]
    fn an_ipv4_peer_counts_once_whether_it_came_through_an_ipv4_or_a_dual_stack_listener() {
        // `--listen 127.0.0.1:P --listen [::]:Q`: the same client shows as 127.0.0.1 on
        // the first and as ::ffff:127.0.0.1 on the second.
        let cap = ConnCap::new(10, Some(2));
        let v4 = SocketAddr::from(([127, 0, 0, 1], 1));
        let mapped = SocketAddr::from(([0, 0, 0, 0, 0, 0xffff, 0x7f00, 1], 2));
        let _first = cap.admit(v4).unwrap();
        let second = cap.admit(mapped).unwrap();
        assert_eq!(
            cap.admit(mapped).unwrap_err(),
            Refusal::PerPeer { max_per_peer: 2 }
        );
        assert_eq!(
            cap.admit(v4).unwrap_err(),
            Refusal::PerPeer { max_per_peer: 2 }
        );
        drop(second);
        let _third = cap.admit(v4).unwrap();
        // A real IPv6 peer is another address.
        let _v6 = cap
            .admit(SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], 3)))
            .unwrap();
    }

    #[test]
    fn an_address_leaves_the_map_when_its_last_connection_closes() {
        let cap = ConnCap::new(10, Some(1));
        let a = cap.admit(peer(1, 1)).unwrap();
        drop(a);
        assert!(cap.lock().per_peer.is_empty());
        assert_eq!(cap.open(), 0);
    }

    #[test]
    fn refusals_are_logged_at_most_once_per_interval_and_counted() {
        let cap = ConnCap::new(1, None);
        let why = Refusal::Full { max_conns: 1 };
        cap.refuse((), peer(1, 1), why);
        assert_eq!(cap.lock().unlogged, 0);
        let first_line = cap.lock().last_logged.unwrap();
        for port in 2..12 {
            cap.refuse((), peer(1, port), why);
        }
        // Within the interval: counted, not logged.
        assert_eq!(cap.lock().unlogged, 10);
        assert_eq!(cap.lock().last_logged, Some(first_line));
        // Past the interval, the next refusal is logged and reports the count.
        cap.lock().last_logged = Some(first_line - REFUSAL_LOG_INTERVAL);
        cap.refuse((), peer(1, 99), why);
        assert_eq!(cap.lock().unlogged, 0);
        assert!(cap.lock().last_logged.unwrap() > first_line);
    }

    #[test]
    fn refusals_name_the_flag_and_its_value() {
        assert_eq!(
            Refusal::Full { max_conns: 3 }.to_string(),
            "--max-conns 3 connections already open"
        );
        assert_eq!(
            Refusal::PerPeer { max_per_peer: 4 }.to_string(),
            "--max-conns-per-ip 4 connections from this address already open"
        );
    }
}
