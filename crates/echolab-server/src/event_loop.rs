//! What the readiness loops (event, reactor) share under their scheduling idea: the table
//! of connections by token, one connection's state and its turn of echo on a non-blocking
//! socket (with a read budget), and the paced accept; their idle deadlines are
//! [`crate::deadline::Deadlines`]. A model file keeps only how it waits for readiness and in what order
//! it serves what is ready.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::accept;
use crate::admission::{Admission, ConnCap};
use crate::conn::{self, End};
use crate::echo::{Echo, EchoConfig};
use crate::net;

/// Each loop's read buffer, shared by its connections: one read takes a whole 64 KiB.
pub const READ_BUF: usize = 64 * 1024;

/// At most this many accepts per loop turn, so a connection flood cannot starve the
/// connections already open.
pub const ACCEPTS_PER_TURN: usize = 64;

/// Only for `scripts/bench-models.py --preset budget`, which measures what a loop's read
/// budget costs: `0` lifts it (read until `WouldBlock`), `N` sets it. Not a flag: no user
/// wants it.
pub const BENCH_BUDGET_ENV: &str = "ECHOLAB_BENCH_READS_PER_TURN";

/// `budget`, or what [`BENCH_BUDGET_ENV`] says (an error if it is not a whole number).
pub fn bench_read_budget(budget: usize) -> io::Result<usize> {
    parse_read_budget(std::env::var(BENCH_BUDGET_ENV).ok().as_deref(), budget)
}

fn parse_read_budget(text: Option<&str>, budget: usize) -> io::Result<usize> {
    let Some(text) = text else {
        return Ok(budget);
    };
    match text.parse::<usize>() {
        Ok(0) => Ok(usize::MAX),
        Ok(n) => Ok(n),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{BENCH_BUDGET_ENV}={text}: not a whole number (0 lifts the budget)"),
        )),
    }
}

/// The connections of one loop, indexed by their token (the slot they sit in); a closed
/// connection's slot is reused before the table grows, so tokens stay small.
#[derive(Debug)]
pub struct Slots<T> {
    slots: Vec<Option<T>>,
    /// Free slots of `slots`.
    free: Vec<usize>,
}

impl<T> Default for Slots<T> {
    fn default() -> Slots<T> {
        Slots {
            slots: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T> Slots<T> {
    /// The token the next [`Slots::insert`] will use (register the socket under it first).
    pub fn next_token(&self) -> usize {
        self.free.last().copied().unwrap_or(self.slots.len())
    }

    /// Stores `value` under [`Slots::next_token`] and returns that token.
    pub fn insert(&mut self, value: T) -> usize {
        match self.free.pop() {
            Some(token) => {
                self.slots[token] = Some(value);
                token
            }
            None => {
                self.slots.push(Some(value));
                self.slots.len() - 1
            }
        }
    }

    pub fn get_mut(&mut self, token: usize) -> Option<&mut T> {
        self.slots.get_mut(token)?.as_mut()
    }

    /// Takes the value out of `token`'s slot, which becomes free.
    pub fn remove(&mut self, token: usize) -> Option<T> {
        let value = self.slots.get_mut(token)?.take()?;
        self.free.push(token);
        Some(value)
    }

    /// The tokens in use, in slot order.
    pub fn tokens(&self) -> impl Iterator<Item = usize> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(token, slot)| slot.as_ref().map(|_| token))
    }

    /// Takes every value out; every slot becomes free.
    pub fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.free.clear();
        self.slots.drain(..).flatten()
    }

    pub fn iter(&self) -> impl Iterator<Item = (usize, &T)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(token, slot)| slot.as_ref().map(|value| (token, value)))
    }
}

/// What readiness the loop learned for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ready {
    /// Readable, or the peer's FIN or an error (which `read` reports).
    pub readable: bool,
    /// Writable, or an error (which `write` reports).
    pub writable: bool,
}

impl Ready {
    /// No readiness: a connection served again because its read budget ran out.
    pub const NONE: Ready = Ready {
        readable: false,
        writable: false,
    };

    /// What a mio (epoll) event reports.
    pub fn of_mio(event: &mio::event::Event) -> Ready {
        let failed = event.is_read_closed() || event.is_error();
        Ready {
            readable: event.is_readable() || failed,
            writable: event.is_writable() || event.is_write_closed() || event.is_error(),
        }
    }
}

/// What one turn did to a connection.
#[derive(Debug)]
pub enum Served {
    /// Bytes moved: its idle deadline moves too.
    Moved,
    /// Nothing moved (a spurious wake-up, or backpressure).
    Quiet,
    /// The connection is to be closed.
    Close(End),
}

/// One connection of a loop: its socket, its [`Echo`], and its place under the cap.
#[derive(Debug)]
pub struct LoopConn<S> {
    pub stream: S,
    pub peer: SocketAddr,
    /// Bytes owed to the peer and the lines-mode state; empty (no allocation) when the
    /// kernel took everything.
    pub echo: Echo,
    /// Reading stopped before the socket said `WouldBlock` (backpressure, or the turn's
    /// budget ran out): an edge-triggered loop gets no new edge for the bytes already
    /// there, so it must read again once room frees up, or next turn.
    read_pending: bool,
    /// Its place under `--max-conns`, freed when the connection drops.
    _admission: Admission,
}

impl<S> LoopConn<S>
where
    for<'s> &'s S: Read + Write,
{
    /// A connection just accepted and admitted; logs its opening.
    pub fn open(stream: S, peer: SocketAddr, echo: EchoConfig, admission: Admission) -> Self {
        conn::log_opened(peer);
        LoopConn {
            stream,
            peer,
            echo: Echo::new(echo),
            read_pending: false,
            _admission: admission,
        }
    }

    /// Whether bytes may still wait in the socket with no readiness to come for them:
    /// the read budget ran out while the echo still has room.
    pub fn read_pending(&self) -> bool {
        self.read_pending && self.echo.wants_read()
    }

    /// One turn: sends what is owed if writable, then at most `reads` reads into `buf`,
    /// each echoed at once ([`Echo::on_input`]) while the socket has bytes and the echo
    /// has room. Only `WouldBlock` or end of input ends the reading: a short read is no
    /// proof that the socket is empty (a read stops at the urgent mark of MSG_OOB data).
    pub fn serve(&mut self, buf: &mut [u8], ready: Ready, reads: usize) -> Served {
        let mut moved = false;
        if ready.writable && self.echo.wants_write() {
            let before = self.echo.bytes_out();
            if let Err(err) = self.echo.flush(&mut &self.stream) {
                return Served::Close(End::Failed(err.into()));
            }
            moved = self.echo.bytes_out() != before;
        }
        if ready.readable || self.read_pending {
            // Pending until `read` says `WouldBlock` (or end of input).
            self.read_pending = true;
            for _ in 0..reads {
                let room = self.echo.read_room().min(buf.len());
                if room == 0 {
                    break; // Backpressure (or end of input): bytes may wait in the socket.
                }
                let mut writer = &self.stream;
                let (result, at_eof) = match (&self.stream).read(&mut buf[..room]) {
                    Ok(0) => (self.echo.on_eof(&mut writer), true),
                    Ok(n) => {
                        log::trace!("server received {n} bytes");
                        (self.echo.on_input(&buf[..n], &mut writer), false)
                    }
                    Err(err) if net::would_block(&err) => {
                        self.read_pending = false;
                        break;
                    }
                    Err(err) if net::interrupted(&err) => continue,
                    Err(err) => return Served::Close(End::Failed(err.into())),
                };
                moved = true;
                if let Err(err) = result {
                    return Served::Close(End::Failed(err));
                }
                if at_eof {
                    self.read_pending = false;
                    break;
                }
            }
        }
        if self.echo.is_finished() {
            Served::Close(End::PeerClosed)
        } else if moved {
            Served::Moved
        } else {
            Served::Quiet
        }
    }

    /// Closes the socket, frees the place under the cap, then logs the close line.
    pub fn close(self, end: &End) {
        let LoopConn {
            stream,
            peer,
            echo,
            _admission: admission,
            ..
        } = self;
        drop(stream);
        drop(admission);
        conn::log_closed(peer, &echo, end);
    }
}

/// When a loop accepts: after the listener reported a connection, again at once when
/// the last turn stopped at [`ACCEPTS_PER_TURN`] (no new edge reports the rest), and not
/// at all during a pause after EMFILE ([`accept::after_accept_error`]).
#[derive(Debug, Default)]
pub struct AcceptPace {
    /// Out of descriptors: the listener is left alone until then.
    paused_until: Option<Instant>,
    /// The last turn stopped at its limit with connections perhaps still queued.
    pending: bool,
}

impl AcceptPace {
    /// Whether the listener is to be watched now (not during a pause).
    pub fn listening(&self, now: Instant) -> bool {
        self.paused_until.is_none_or(|until| until <= now)
    }

    /// Whether to accept this turn, the listener having reported a connection or not.
    /// A pause that ended counts as a report: connections may have queued during it.
    pub fn due(&mut self, listener_ready: bool, now: Instant) -> bool {
        if let Some(until) = self.paused_until {
            if until > now {
                return false;
            }
            self.paused_until = None;
            return true;
        }
        listener_ready || self.pending
    }

    /// How long the loop may sleep for the accepts' sake: not at all with accepts
    /// pending, until the end of a pause, or forever (`None`).
    pub fn wake(&self, now: Instant) -> Option<Duration> {
        if self.pending {
            return Some(Duration::ZERO);
        }
        self.paused_until
            .map(|until| until.saturating_duration_since(now))
    }

    /// Accepts with `accept` until it would block, or [`ACCEPTS_PER_TURN`], or a pause;
    /// hands each connection admitted under `cap` to `on_conn` (the rest are refused and
    /// logged by the cap).
    pub fn accept<C>(
        &mut self,
        cap: &Arc<ConnCap>,
        mut accept: impl FnMut() -> io::Result<(C, SocketAddr)>,
        mut on_conn: impl FnMut(C, SocketAddr, Admission),
    ) {
        self.pending = false;
        for _ in 0..ACCEPTS_PER_TURN {
            match accept() {
                Ok((conn, peer)) => match cap.admit(peer) {
                    Ok(admission) => on_conn(conn, peer, admission),
                    Err(why) => cap.refuse(conn, peer, why),
                },
                Err(err) if net::would_block(&err) => return,
                // Out of descriptors (or worse): retrying now would fail the same way and
                // spin, since the queued connection keeps the listener ready.
                Err(err) => {
                    if let Some(until) = accept::after_accept_error(&err) {
                        self.paused_until = Some(until);
                        return;
                    }
                }
            }
        }
        self.pending = true;
    }
}

/// The earlier of two wake-ups, as durations or instants (`None`: never).
pub fn earliest<T: Ord>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn slots_reuse_a_freed_token_before_growing() {
        let mut slots = Slots::default();
        assert_eq!(slots.next_token(), 0);
        assert_eq!(slots.insert('a'), 0);
        assert_eq!(slots.insert('b'), 1);
        assert_eq!(slots.insert('c'), 2);
        assert_eq!(slots.remove(1), Some('b'));
        assert_eq!(slots.remove(1), None);
        assert_eq!(slots.remove(9), None);
        assert_eq!(slots.get_mut(1), None);
        assert_eq!(slots.next_token(), 1);
        assert_eq!(slots.insert('d'), 1);
        assert_eq!(slots.next_token(), 3);
        assert_eq!(slots.get_mut(2), Some(&mut 'c'));
        slots.remove(0);
        assert_eq!(slots.tokens().collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(slots.iter().map(|(_, v)| *v).collect::<String>(), "dc");
        assert_eq!(slots.drain().collect::<String>(), "dc");
        assert_eq!(slots.tokens().count(), 0);
        assert_eq!(slots.insert('e'), 0);
    }

    #[test]
    fn the_accept_pace_waits_out_a_pause_then_accepts_once_it_ended() {
        let t0 = Instant::now();
        let mut pace = AcceptPace::default();
        assert!(pace.listening(t0));
        assert!(!pace.due(false, t0));
        assert!(pace.due(true, t0));
        assert_eq!(pace.wake(t0), None);
        pace.paused_until = Some(t0 + Duration::from_millis(100));
        assert!(!pace.listening(t0));
        assert_eq!(pace.wake(t0), Some(Duration::from_millis(100)));
        assert!(!pace.due(true, t0 + Duration::from_millis(99)));
        assert!(pace.listening(t0 + Duration::from_millis(100)));
        assert!(pace.due(false, t0 + Duration::from_millis(100)));
        assert!(!pace.due(false, t0 + Duration::from_millis(101)));
        pace.pending = true;
        assert_eq!(pace.wake(t0), Some(Duration::ZERO));
        assert!(pace.due(false, t0));
    }

    #[test]
    fn an_accept_turn_stops_at_its_limit_and_says_more_may_wait() {
        let cap = ConnCap::new(usize::MAX, None);
        let mut pace = AcceptPace::default();
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut n_conns = 0;
        pace.accept(&cap, || Ok(((), peer)), |(), _, _| n_conns += 1);
        assert_eq!(n_conns, ACCEPTS_PER_TURN);
        assert!(pace.due(false, Instant::now()));
        let mut left = 3;
        pace.accept(
            &cap,
            || {
                if left == 0 {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                left -= 1;
                Ok(((), peer))
            },
            |(), _, _| n_conns += 1,
        );
        assert_eq!(n_conns, ACCEPTS_PER_TURN + 3);
        assert!(!pace.due(false, Instant::now()));
    }

    /// A connection over a Unix socket pair (the turn needs only `Read + Write`), and the
    /// peer's end.
    fn pair() -> (LoopConn<UnixStream>, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        theirs
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let admission = ConnCap::new(1, None).admit(peer).unwrap();
        let conn = LoopConn::open(ours, peer, EchoConfig::default(), admission);
        (conn, theirs)
    }

    const READABLE: Ready = Ready {
        readable: true,
        writable: false,
    };

    #[test]
    fn a_turn_reads_at_most_its_budget_and_says_bytes_are_left() {
        let (mut conn, mut peer) = pair();
        peer.write_all(b"abcdefghij").unwrap();
        let mut buf = [0u8; 3];
        assert!(matches!(conn.serve(&mut buf, READABLE, 2), Served::Moved));
        assert_eq!(conn.echo.bytes_in(), 6);
        assert!(
            conn.read_pending(),
            "bytes are left, and no new edge will say so"
        );
        let mut echoed = [0u8; 6];
        peer.read_exact(&mut echoed).unwrap();
        assert_eq!(&echoed, b"abcdef");
        // The next turn goes on without readiness news, until the socket would block.
        assert!(matches!(
            conn.serve(&mut buf, Ready::NONE, 8),
            Served::Moved
        ));
        assert_eq!(conn.echo.bytes_in(), 10);
        assert!(!conn.read_pending());
        // Nothing left: a turn moves nothing.
        assert!(matches!(conn.serve(&mut buf, READABLE, 8), Served::Quiet));
        assert!(matches!(
            conn.serve(&mut buf, Ready::NONE, 8),
            Served::Quiet
        ));
    }

    #[test]
    fn a_turn_ends_at_the_peers_close_once_everything_went_back() {
        let (mut conn, mut peer) = pair();
        peer.write_all(b"bye").unwrap();
        peer.shutdown(std::net::Shutdown::Write).unwrap();
        let mut buf = [0u8; 64];
        match conn.serve(&mut buf, READABLE, 4) {
            Served::Close(End::PeerClosed) => {}
            other => panic!("{other:?}"),
        }
        assert!(!conn.read_pending());
        conn.close(&End::PeerClosed);
        let mut echoed = Vec::new();
        peer.read_to_end(&mut echoed).unwrap();
        assert_eq!(echoed, b"bye");
    }

    #[test]
    fn a_writable_turn_sends_what_is_owed_and_a_closed_peer_ends_it() {
        let (mut conn, mut peer) = pair();
        // Fill our side until the kernel takes no more: the rest is owed.
        let chunk = vec![7u8; 64 * 1024];
        let mut buf = vec![0u8; 64 * 1024];
        peer.set_nonblocking(true).unwrap();
        while peer.write(&chunk).is_ok() {
            let _ = conn.serve(&mut buf, READABLE, 1);
            if conn.echo.wants_write() {
                break;
            }
        }
        assert!(
            conn.echo.wants_write(),
            "nothing owed: the kernel took everything"
        );
        let owed_before = conn.echo.bytes_out();
        // The peer reads: our side becomes writable, and a writable turn sends.
        let mut sink = vec![0u8; 1 << 20];
        while peer.read(&mut sink).is_ok() {}
        let writable = Ready {
            readable: false,
            writable: true,
        };
        assert!(matches!(conn.serve(&mut buf, writable, 0), Served::Moved));
        assert!(conn.echo.bytes_out() > owed_before);
        // A closed peer: the next write fails (or the read sees the end), and the turn
        // says close.
        drop(peer);
        let both = Ready {
            readable: true,
            writable: true,
        };
        let ended = (0..4).find_map(|_| match conn.serve(&mut buf, both, 1) {
            Served::Close(end) => Some(end),
            _ => None,
        });
        assert!(ended.is_some());
    }

    #[test]
    fn the_benchmarks_read_budget_is_the_default_unless_set() {
        assert_eq!(parse_read_budget(None, 4).unwrap(), 4);
        assert_eq!(parse_read_budget(Some("0"), 4).unwrap(), usize::MAX);
        assert_eq!(parse_read_budget(Some("7"), 4).unwrap(), 7);
        let err = parse_read_budget(Some("x"), 4).unwrap_err().to_string();
        assert!(err.contains("ECHOLAB_BENCH_READS_PER_TURN=x"), "{err}");
    }

    #[test]
    fn out_of_descriptors_pauses_accepting() {
        let cap = ConnCap::new(usize::MAX, None);
        let mut pace = AcceptPace::default();
        let mut n_conns = 0;
        let emfile = || -> io::Result<((), SocketAddr)> { Err(io::Error::from_raw_os_error(24)) };
        pace.accept(&cap, emfile, |(), _, _| n_conns += 1);
        let now = Instant::now();
        assert_eq!(n_conns, 0);
        assert!(!pace.listening(now), "a pause after EMFILE");
        assert!(pace.wake(now).is_some_and(|wait| wait > Duration::ZERO));
        assert!(!pace.due(true, now));
    }

    #[test]
    fn earliest_of_two_wake_ups() {
        let ms = Duration::from_millis;
        assert_eq!(earliest::<Duration>(None, None), None);
        assert_eq!(earliest(Some(ms(3)), None), Some(ms(3)));
        assert_eq!(earliest(None, Some(ms(4))), Some(ms(4)));
        assert_eq!(earliest(Some(ms(5)), Some(ms(2))), Some(ms(2)));
    }
}
